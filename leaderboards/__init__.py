"""longvila.leaderboards: result files (``results``), the generated tables and page (``build``), and the
headless-browser check of that page (``browser``)."""
