"""NAB (Numenta Anomaly Benchmark) support: an exact reimplementation of upstream's scorer
(``scorer``), a runner that plays our univariate model as a NAB detector (``runner``), and the
``python -m detector.nab`` command. Nothing here is imported by the service at run time.
"""
