"""glus.model"""
