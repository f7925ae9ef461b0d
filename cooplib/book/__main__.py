"""`python -m cooplib.book ...`: the book's command (see `cooplib.book.make`)."""
import sys

from .make import main

sys.exit(main())
