"""pipeline/nets"""
