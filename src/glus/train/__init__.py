"""glus.train"""
