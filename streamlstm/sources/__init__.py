"""Where events come from: ``sources.kafka`` (the daemon) and ``sources.files`` (train, replay).

Nothing is imported here, so loading one source never pulls in another's client library.
"""
