"""LongVILA end to end: data, five-stage recipe, MM-SP trainer, long-video evaluations.

The top-level folders of the repository are the paper's parts and install as sub-packages of this one
namespace: ``longvila.data`` (data/), ``longvila.model`` (model/), ``longvila.parallel`` (parallel/),
``longvila.pipelines`` (pipelines/), ``longvila.eval`` (eval/), ``longvila.leaderboards`` (leaderboards/).
This package itself holds only the command line and small shared utilities.
"""

__version__ = "0.1.0"
