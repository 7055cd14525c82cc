"""longvila.data"""
