"""A fake reconstruction server for the add-on's tests (behaviour picked by MICROEXP_FAKE_MODE)."""
