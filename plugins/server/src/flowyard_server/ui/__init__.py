"""The web dashboard of ``flowyard serve`` under ``/ui`` (see :mod:`flowyard_server.ui.pages`):
runs, a run's live DAG, tasks, agents, costs and providers, behind a browser session.
"""
