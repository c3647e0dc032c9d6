"""glus.data"""
