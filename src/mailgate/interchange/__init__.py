"""interchange: threads that claim due recipients per connector, deliver and record outcomes."""
