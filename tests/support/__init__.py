"""Helpers shared by the test suite: a real mailgate subprocess, SMTP clients, Maildir readers."""
