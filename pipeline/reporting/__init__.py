"""The krea-report body: options, data loading, tables, terminal text, the HTML page."""
