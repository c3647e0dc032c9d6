"""glus.eval"""
