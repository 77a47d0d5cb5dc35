"""The auth service: accounts, API keys kept as keyed hashes, and who a token speaks for."""
