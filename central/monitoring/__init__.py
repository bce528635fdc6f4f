"""Finding and judging: ``screening`` (the rule library over the population), ``suspicions``,
``review`` (cases, decisions), ``analysis`` (rankings), ``risk`` (per object), ``split_audit``; the
JSON routes (``routes``, ``risk_routes``) and the review verbs (``cli``).
"""
