"""The lab: plays journeys against the shop as a client would, and reports."""
