"""The MCP surface: the `fetch`, `search` and `do` tools, resources and instructions."""
