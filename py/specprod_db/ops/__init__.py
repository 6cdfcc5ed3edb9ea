"""The read-side and operator commands' logic: status, report, verify, history,
maintain, combine."""
