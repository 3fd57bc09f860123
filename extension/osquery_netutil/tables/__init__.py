"""The tables as osquery table plugins: osquery's context to store queries, the answer-size model, the thrift reply."""
