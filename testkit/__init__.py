"""What the tests and the benchmarks share, kept out of both so neither imports the other:
real processes and listeners (`support`), a stand-in for osqueryd's extension manager
(`manager`), and rows shaped like the table's (`rows`)."""
