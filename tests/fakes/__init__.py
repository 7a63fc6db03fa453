"""Stand-ins for external providers: real HTTP servers on loopback that record what they receive."""
