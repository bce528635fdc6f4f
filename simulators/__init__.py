"""Stand-ins for the world around Yibao Edge, for demos, tests and benchmarks.

``his``: a hospital information system that sends realistic settlements to an agent.
The ``yibao-sim`` command (``simulators.cli``) is a thin shell over these libraries.
"""

from .his import HisSummary, Population, generate_settlement, make_population, run_his

__all__ = ["HisSummary", "Population", "generate_settlement", "make_population", "run_his"]
