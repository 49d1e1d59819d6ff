"""What every stage runs inside: processes and ranks, interrupts, notices, paths and argument checks."""
