"""glus.inference"""
