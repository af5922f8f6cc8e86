"""The service layer: the `lensdb` command line (``service.cli``) now; HTTP, pages and scheduler to come."""
