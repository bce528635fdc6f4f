"""What agents enforce: the TUF repository (``tuf_repo``), blacklist and document bundles
(``bundles``), operator documents (``documents``), maker-checker change requests (``changes``), and
the replacement-card gate (``cards``).
"""
