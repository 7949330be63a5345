"""Pure rules and models of the shop. Imports nothing of statelab's outside this package."""
