"""longvila.parallel"""
