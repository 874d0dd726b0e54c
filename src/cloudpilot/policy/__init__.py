"""Pure decisions: given inputs (and ``now``), return what to do. No I/O, no clock."""
