"""The HTTP client: speaks ephemera's API from another process or machine."""
