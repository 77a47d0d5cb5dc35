"""The billing service: the append-only credit ledger, balances, two-phase holds, prices, plans."""
