"""Book layer: execute a profile's notebooks with papermill, build the Jupyter Book, check it in a browser.
May import every other part of cooplib (nothing imports it); `python -m cooplib.book` is its command."""
