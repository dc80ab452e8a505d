"""Who is calling: bearer tokens for HTTP, flags and the client's name for stdio."""
