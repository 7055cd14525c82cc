"""longvila.model"""
