"""longvila.leaderboards: the published results of the project.

- ``results``: the result-file format every evaluation and benchmark writes (``write_result``) and the
  strict reader (``load_result`` / ``load_results``).
- ``tables`` / ``plots`` / ``build``: README.md, index.html and assets/ generated from the result files and
  the quoted anchors in ``quoted.json`` (``longvila leaderboards build``, ``make leaderboards``).
- ``browser``: the page checked in headless chromium over the DevTools protocol.
"""
