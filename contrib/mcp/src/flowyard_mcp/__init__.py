"""flowyard-mcp: Model Context Protocol servers as flowyard tools, and flowyard as an MCP server."""
