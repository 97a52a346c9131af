"""Sinks: where results go (console, JSON lines; webhooks and Alertmanager come with response).

Every sink implements ``detector.pipeline.WindowSink``: ``emit`` returns once the windows are
safely handled (the pipeline commits input offsets only after every sink returned), and raises
``InfrastructureError`` when it cannot do its job.
"""
