"""longvila.leaderboards"""
