"""Helpers shared by the integration and end-to-end suites: free ports, subprocesses, Datadog's test agent."""
