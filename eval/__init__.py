"""longvila.eval"""
