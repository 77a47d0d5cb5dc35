"""The billing schema revisions."""
