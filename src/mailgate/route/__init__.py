"""route: ordered address-space rules mapping each recipient to a connector."""
