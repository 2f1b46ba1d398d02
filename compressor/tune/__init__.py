"""`mcompress tune`: a search over the recipe space on Ray Tune (tune/search.py).

Ray, Ray Tune and Optuna (the ``distributed`` extra) are imported only inside the functions that run
the search, so this package imports without them and `mcompress --help` stays fast."""
