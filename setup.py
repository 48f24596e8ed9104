from setuptools import find_packages, setup

setup(
    name="aurora-registry",
    version="0.1.0",
    description="A distributed object registry on Twisted Perspective Broker",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    # twisted.plugins carries the `twistd registry` plugin (no __init__.py:
    # the package is Twisted's own).
    packages=find_packages(include=["aurora", "aurora.*"]) + ["twisted.plugins"],
    entry_points={"console_scripts": ["aurora = aurora.cli:main"]},
    install_requires=[
        "twisted[tls]>=24.7",
        "zope.interface>=6",
        "PyDispatcher>=2.0.7",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-twisted>=1.14", "pytest-timeout>=2.2",
                 "hypothesis>=6"],
        # The peers the benchmark suite measures aurora against.
        "bench": ["Pyro5>=5.14", "rpyc>=6"],
    },
)
