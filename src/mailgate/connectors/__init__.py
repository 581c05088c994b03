"""connectors: the ways out of mailgate (postoffice Maildirs now; smarthost, LMTP later)."""
