"""longvila.pipelines"""
