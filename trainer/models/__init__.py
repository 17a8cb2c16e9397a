"""Model definitions: teachers and the MASF family."""
