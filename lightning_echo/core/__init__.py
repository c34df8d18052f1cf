"""Pure functions and small value types shared by every layer (torch only, no Lightning)."""
