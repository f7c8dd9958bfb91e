"""Reading and writing what users bring and take: captioned videos, subject images, adapter files and
their exports to other tools' formats."""
