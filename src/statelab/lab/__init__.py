"""The lab: plays the classic journeys against a deployment as a client would,
breaks it on purpose, checks invariants and reports what each placement costs
and loses."""
